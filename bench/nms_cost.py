"""python -m bench.nms_cost: what OpenCV's NMS costs against the number of candidates that
enter it, the figure `pre_nms_top_k`'s default (mlserver_npu/processing/detection.py) is
chosen from. Candidates as a detector at a threshold of 0 gives them: boxes all over a
640x640 input, 80 classes, uniform scores (few overlap enough to be dropped, the costly case:
OpenCV compares each candidate with every box kept so far)."""
import argparse
import time

import cv2
import numpy as np


def candidates(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 600, (count, 2))
    size = rng.uniform(8, 160, (count, 2))
    boxes = np.concatenate([corner, size], axis=1)
    return boxes, rng.random(count).astype(np.float32), rng.integers(0, 80, count).astype(np.int32)


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="500,1000,2000,4000,8400,30000,100000")
    parser.add_argument("--iou", type=float, default=0.7)
    args = parser.parse_args()
    print(f"{'candidates':>10} {'NMSBoxes ms':>12} {'Batched ms':>11} {'argpartition ms':>16}")
    for count in (int(c) for c in args.counts.split(",")):
        boxes, scores, classes = candidates(count)
        repeats = 5 if count <= 8400 else 1
        agnostic = best_of(repeats, lambda: cv2.dnn.NMSBoxes(boxes, scores, 0.0, args.iou))
        batched = best_of(
            repeats, lambda: cv2.dnn.NMSBoxesBatched(boxes, scores, classes, 0.0, args.iou)
        )
        cut = best_of(5, lambda: np.argpartition(-scores, min(999, count - 1))[:1000])
        print(f"{count:>10} {agnostic * 1e3:>12.1f} {batched * 1e3:>11.1f} {cut * 1e3:>16.2f}")


if __name__ == "__main__":
    main()
