FROM python:3.11-slim
WORKDIR /srv/ehc
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY app ./app
COPY fhir_profiles ./fhir_profiles
# A regular install: fhir_profiles is packaged inside it (app/_profiles).
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /var/lib/ehc ehc \
    && mkdir -p /var/lib/ehc && chown ehc /var/lib/ehc
USER ehc
ENV EHC_DATA_DIR=/var/lib/ehc
EXPOSE 8080
# gunicorn (gthread): one worker per CPU, 4 threads each; /healthz and /readyz for orchestrators
CMD ["ehc", "serve", "--host", "0.0.0.0", "--port", "8080"]
