# One image for every celeray service (see docker-compose.yml); each service picks its
# command. The same commands run under supervisor on one machine (supervisor/supervisord.conf).
FROM python:3.11-slim

# Ray's wheels need no compiler; curl only serves the health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user: Celery warns against root, and nothing here needs it.
RUN useradd --create-home --uid 1000 celeray
WORKDIR /tmp/celeray-src

# What the wheel is built from: the packages, and supervisor/ (the wheel ships its
# supervisord.conf through the link celeray/supervisord.conf).
COPY pyproject.toml README.md ./
COPY celeray/ celeray/
COPY tasks/ tasks/
COPY ray_jobs/ ray_jobs/
COPY beat_schedule.py ./
COPY supervisor/ supervisor/
# With the s3 extra (s3fs): sources, staging and sinks on S3 or an S3-compatible store.
# The sources go once installed: `celery -A tasks` searches its working folder first, where
# a copy of tasks/ would be imported instead of the installed one (celeray/toplevel.py).
RUN pip install --no-cache-dir ".[s3]" && rm -rf /tmp/celeray-src

USER celeray
WORKDIR /home/celeray
# State (beat schedule, staging, generated credentials) on a volume of its own.
ENV CELERAY_HOME=/var/lib/celeray \
    CELERAY_PIPELINES=/etc/celeray/pipelines.toml \
    CELERAY_LOCAL_ROOTS=/data \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
CMD ["celeray", "validate"]
