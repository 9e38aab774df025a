"""The hand-written alternative for OCR: rapidocr-onnxruntime wrapped in a FastAPI upload
endpoint, as users write it (the engine called in a worker thread per request).

    PYTHONPATH=<unpacked rapidocr wheel> uvicorn bench.ocr_fastapi:app --port 8000
"""
import asyncio
from typing import Dict

from fastapi import FastAPI, File, UploadFile
from rapidocr_onnxruntime import RapidOCR

engine = RapidOCR()
app = FastAPI(title="FastAPI + rapidocr-onnxruntime")


@app.get("/health")
async def health() -> Dict:
    return {"ok": True}


@app.post("/ocr")
async def ocr(image: UploadFile = File(...)) -> Dict:
    data = await image.read()
    result, _ = await asyncio.to_thread(engine, data)
    lines = [{"text": text, "score": score, "box": box} for box, text, score in result or []]
    return {"lines": lines, "text": "\n".join(line["text"] for line in lines)}
