# mlserver-npu: MLServer 1.7 with the NPU runtime, serving /mnt/models (docs/deploy.md).
#
#   docker build -t mlserver-npu .                                    # onnxruntime on CPU
#   docker build --build-arg EXTRAS=tflite -t mlserver-npu:tflite .   # + LiteRT
#   docker build --build-arg WHEELHOUSE=wheelhouse -t mlserver-npu .  # offline, from wheels
#
# BASE must hold python3 (3.10-3.12) with venv; the default is the official slim image.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# Extras of the distribution, comma-separated: tflite, furiosa, openvino, ...
ARG EXTRAS=""
# A folder of the build context holding every wheel needed (made with `pip wheel`, see
# docs/deploy.md): install from it alone, without a package registry.
ARG WHEELHOUSE=""
# A folder of the build context to bake into the image as /mnt/models (default: none;
# mount the models, or let KServe's storage initializer fill /mnt/models).
ARG MODELS=""
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/mlserver-npu; \
    if [ -n "$WHEELHOUSE" ]; then index="--no-index --find-links /src/$WHEELHOUSE"; else index=""; fi; \
    /opt/mlserver-npu/bin/pip install --no-cache-dir --disable-pip-version-check $index \
        "/src${EXTRAS:+[$EXTRAS]}"; \
    mkdir -p /models; \
    if [ -n "$MODELS" ]; then cp -r "/src/$MODELS/." /models/; fi

FROM ${BASE}
# Arguments of `mlserver-npu compile` run at build time, e.g. "/mnt/models/resnet", so that
# compiled blobs are baked into MLSERVER_NPU_CACHE_DIR (default: off).
ARG COMPILE=""
ENV PATH=/opt/mlserver-npu/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLSERVER_MODEL_IMPLEMENTATION=mlserver_npu.NPURuntime \
    MLSERVER_HOST=0.0.0.0 \
    MLSERVER_HTTP_PORT=8080 \
    MLSERVER_GRPC_PORT=8081 \
    MLSERVER_METRICS_PORT=8082 \
    MLSERVER_PARALLEL_WORKERS=0 \
    MLSERVER_GRPC_MAX_MESSAGE_LENGTH=67108864 \
    MLSERVER_NPU_CACHE_DIR=/var/cache/mlserver-npu \
    MLSERVER_MODELS_DIR=/mnt/models
COPY --from=build /opt/mlserver-npu /opt/mlserver-npu
COPY --from=build /models /mnt/models
# A numeric user (Kubernetes' runAsNonRoot can only check a number); group 0 may write, for
# platforms that run the image under an arbitrary uid (OpenShift).
RUN set -eu; \
    useradd --uid 1000 --gid 0 --home-dir /home/mlserver --create-home --shell /usr/sbin/nologin mlserver; \
    mkdir -p "$MLSERVER_NPU_CACHE_DIR"; \
    chown -R 1000:0 "$MLSERVER_NPU_CACHE_DIR" /home/mlserver; \
    chmod -R g=u "$MLSERVER_NPU_CACHE_DIR" /home/mlserver
USER 1000
# MLServer writes .metrics/ and .envs/ into its working directory.
WORKDIR /home/mlserver
RUN if [ -n "$COMPILE" ]; then mlserver-npu compile $COMPILE; fi
# Declared after the compile step: a build step's writes into a volume would be dropped.
VOLUME ["/var/cache/mlserver-npu"]
EXPOSE 8080 8081 8082
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD \
    python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['MLSERVER_HTTP_PORT'] + '/v2/health/ready', timeout=4)"
# MLSERVER_MODELS_DIR as in MLServer's own image: Seldon Core 2 points it at its agent's folder.
# `mlserver-npu start` is `mlserver start` that exits 1 when a model fails to load (MLServer
# exits 0, so a restart policy never fires); MLSERVER_NPU_KEEP_GOING=1 serves the others and
# loads the broken one again when its files change.
CMD ["sh", "-c", "exec mlserver-npu start \"$MLSERVER_MODELS_DIR\""]
