# One image for the whole stack: authserver, fhirserver, ehr, the example CDS Service and the
# `mockehr` CLI (used by the compose `init` service). No secrets are baked in: the dev CA, TLS
# certificates, key-encryption key and admin token are created at run time by `mockehr init` in
# the shared data volume (/data), or supplied through the environment in production.
# The base image is overridable (compose passes MOCKEHR_PYTHON_IMAGE) so that a machine that cannot
# pull from a container registry can build on a stand-in with the same interface: `python` and
# `pip` on PATH (see tests/compose/standins.py).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# A fixed, unprivileged uid/gid so files it writes to volumes have a predictable owner.
RUN groupadd --system --gid 10001 mockehr \
    && useradd --system --uid 10001 --gid mockehr --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mockehr

WORKDIR /app

# Dependencies first (their own layer, rebuilt only when pyproject.toml or constraints.txt
# change): the runtime requirements are read from pyproject.toml and pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the source, installed editable (alembic.ini and alembic/ are used from /app).
COPY . .
# /data is owned by the app user so that an empty named volume mounted there (compose's `data`)
# is initialised with that owner and `mockehr init` can write into it.
RUN pip install --no-cache-dir -c constraints.txt -e . \
    && mkdir -p /data \
    && chown mockehr:mockehr /data

USER mockehr:mockehr

EXPOSE 9000 9001 9002 9003 9004

CMD ["mockehr", "--help"]
