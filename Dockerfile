FROM python:3.11-slim
WORKDIR /srv/ehc
COPY pyproject.toml README.md ./
COPY app ./app
COPY fhir_profiles ./fhir_profiles
RUN pip install --no-cache-dir .
# fhir_profiles is read from next to the package
ENV PYTHONPATH=/srv/ehc
EXPOSE 8080
CMD ["gunicorn", "-w", "4", "-b", "0.0.0.0:8080", "app.wsgi:app"]
