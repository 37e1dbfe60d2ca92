# CPU image: tensorgate with onnxruntime and the torch CPU wheel; mount a repository at /models.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY server ./server
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ./protos/python '.[torch]'
EXPOSE 8000 8001 8002
HEALTHCHECK CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as s; \
  r = s.HealthStub(grpc.insecure_channel('127.0.0.1:8001')).Check(h.HealthCheckRequest(), timeout=2); \
  raise SystemExit(r.status != h.HealthCheckResponse.SERVING)"
ENTRYPOINT ["tensorgate", "serve", "--model-repository", "/models"]
