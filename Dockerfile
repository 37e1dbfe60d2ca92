# CPU image: tensorgate with onnxruntime, torch (CPU) and the language-model engine.
#   docker build -t tensorgate .
#   docker run -p 8000-8002:8000-8002 -v "$PWD/model_repository:/models:ro" tensorgate
# The install step is deploy/docker/install.sh, which the test suite also runs.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY server ./server
COPY deploy/docker/install.sh ./deploy/docker/install.sh
RUN ./deploy/docker/install.sh /opt/tensorgate cpu

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="tensorgate" \
      org.opencontainers.image.description="gRPC-first inference server speaking the KServe v2 / Triton protocol (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin tensorgate \
    && mkdir /models && chown tensorgate /models
COPY --from=build /opt/tensorgate /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TENSORGATE_MODEL_REPOSITORY=/models \
    TENSORGATE_WORKERS=auto
USER 10001
VOLUME ["/models"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD ["python", "-m", "tensorgate.healthcheck", "127.0.0.1:8001"]
ENTRYPOINT ["tensorgate", "serve"]
