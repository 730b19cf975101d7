# Sluice on CPU: ONNX Runtime and the Numba kernels, serving the bundled model repository.
# Build:  docker build -t sluice:cpu .
# Run:    docker run --rm -p 8001:8001 -p 8002:8002 sluice:cpu --insecure
#         docker run --rm -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" \
#             -v "$PWD/certs:/certs:ro" sluice:cpu --model-repository /models \
#             --tls-cert /certs/tls.crt --tls-key /certs/tls.key
# The server binds 0.0.0.0 and so refuses plaintext unless told --insecure (behind a mesh that
# encrypts, or on a laptop); with TLS its health check needs the CA:
# --health-cmd 'sluice health --tls-ca /certs/ca.crt --url localhost:8001'.
# gRPC on 8001 (KServe v2 / Triton, grpc.health.v1), Prometheus /metrics on 8002. Runs as the
# unprivileged user sluice (uid 10001); deployment state and prediction logs go to
# /var/lib/sluice (mount a volume there to keep them). Kubernetes manifests: deploy/k8s/.
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /opt/sluice
# Dependencies first, in their own layer: a change to the code does not reinstall them.
COPY pyproject.toml README.md ./
COPY deploy/images/requirements.py deploy/images/
RUN python -m venv /opt/venv \
 && python deploy/images/requirements.py > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY proto ./proto
COPY server ./server
COPY kernels ./kernels
COPY clients ./clients
COPY model_repository ./model_repository
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --create-home sluice \
 && sluice --version

USER 10001
EXPOSE 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sluice", "health", "--timeout", "4"]
ENTRYPOINT ["sluice", "serve", "--host", "0.0.0.0", "--state-dir", "/var/lib/sluice"]
