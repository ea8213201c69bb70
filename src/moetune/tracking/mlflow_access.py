"""Who may use the tracking store, checked before Ray starts and before anything is written.

A server with MLflow's authentication app (``mlflow server --app-name basic-auth``) answers 401 to a
missing or wrong login and 403 to a user without permission; without these checks the first refusal would
come from the sweep's lock or a trial's record, as a traceback, after Ray started. A database URI that
cannot be reached makes MLflow retry for minutes; here it is one connection attempt with a short timeout.
Every message names the store with its password hidden and says which variables to set.
"""

from __future__ import annotations

import os
import re
from typing import Any

import requests

from moetune.errors import ConfigError, first_line

TIMEOUT = 5  # seconds per request or connection attempt
DATABASES = ("postgresql", "mysql", "mssql", "oracle")  # MLflow's SQLAlchemy stores (sqlite is checked apart)
LOGIN = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
WRITERS = ("EDIT", "MANAGE")
_USERINFO_PASSWORD = re.compile(r"(//[^/@:]*):[^/@]*@")


def redact(uri: str) -> str:
    """The URI as it may be shown: a password in it becomes ***."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", uri)


def refuse_password_in_uri(uri: str) -> None:
    """tracking.uri is logged (Hydra's .hydra folder, each study's config.yaml): a password in it would be too."""
    if redact(uri) != uri:
        where = "PGPASSWORD or a 0600 ~/.pgpass (PGPASSFILE)" if uri.startswith("postgresql") else LOGIN
        raise ConfigError(
            f"tracking.uri {redact(uri)} carries a password, which would be logged with the config; "
            f"remove it from the URI and give it in {where}"
        )


def _login() -> tuple[str | None, dict[str, Any]]:
    """The user and the credentials MLflow's client itself will send (from its own environment variables)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return user, {"auth": (user, password)}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return None, {"headers": {"Authorization": f"Bearer {token}"}} if token else {}


def _verify() -> bool | str:
    """TLS verification as MLflow's client does it (a private CA's bundle, or off when told)."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def check_server(uri: str, experiment: str | None = None, writable: bool = False) -> None:
    """Reachable, then a login the server accepts (an authenticated search), then for a sweep (``writable``)
    a permission that lets this user write the experiment's runs, so a read-only user is refused before
    any trial. A server without authentication passes every step."""
    refuse_password_in_uri(uri)
    base, shown = uri.rstrip("/"), redact(uri)
    try:
        requests.get(base + "/health", timeout=TIMEOUT, verify=_verify()).raise_for_status()
    except (requests.RequestException, OSError) as exc:
        reason: BaseException = exc
        while reason.__context__ is not None:  # requests wraps the socket's own error three deep
            reason = reason.__context__
        raise ConfigError(
            f"tracking.uri {shown!r} is unreachable ({first_line(reason)}); start the MLflow server or set tracking.uri"
        ) from None
    user, credentials = _login()

    def get(path: str, **params: str) -> requests.Response:
        try:
            return requests.get(base + path, params=params, timeout=TIMEOUT, verify=_verify(), **credentials)
        except (requests.RequestException, OSError) as exc:
            raise ConfigError(f"tracking.uri {shown!r} stopped answering ({type(exc).__name__})") from None

    answer = get("/api/2.0/mlflow/experiments/search", max_results="1")
    if answer.status_code == 401:
        if not credentials:
            raise ConfigError(f"the MLflow server at {shown} requires a login (HTTP 401); set {LOGIN}")
        who = f"user {user!r}" if user else "MLFLOW_TRACKING_TOKEN"
        raise ConfigError(f"the MLflow server at {shown} refused the login of {who} (HTTP 401); check {LOGIN}")
    if answer.status_code == 403:
        raise ConfigError(f"the MLflow server at {shown} refused user {user!r} (HTTP 403); ask its admin for access")
    if answer.status_code != 200:
        raise ConfigError(f"the MLflow server at {shown} answered HTTP {answer.status_code} to a search")
    if writable and experiment:
        _check_writer(get, shown, experiment, user)


def _check_writer(get, shown: str, experiment: str, user: str | None) -> None:
    """A new experiment is created by, and belongs to, the sweep's user; an existing one needs EDIT or
    MANAGE on it (the lock, the ledger and every trial are runs written there)."""
    found = get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
    if found.status_code == 404:
        return
    ask = "ask its owner or the server's admin for EDIT on it, or choose another sweep.name"
    if found.status_code == 403:
        raise ConfigError(f"user {user!r} may not read experiment {experiment!r} at {shown} (HTTP 403); {ask}")
    if found.status_code != 200 or user is None:
        return  # no login to check (an open server, or a token the server checks itself)
    me = get("/api/2.0/mlflow/users/current")
    if me.status_code != 200 or me.json().get("user", {}).get("is_admin"):
        return  # no authentication app, or an admin (who may write anywhere)
    experiment_id = found.json()["experiment"]["experiment_id"]
    granted = get(
        "/api/3.0/mlflow/users/permissions/get",
        username=user,
        resource_type="experiment",
        resource_id=experiment_id,
    )
    permission = granted.json().get("permission") if granted.status_code == 200 else None
    if permission is not None and permission not in WRITERS:
        raise ConfigError(
            f"user {user!r} has {permission} permission on experiment {experiment!r} at {shown}, "
            f"and a sweep writes runs there; {ask}"
        )


def check_database(uri: str) -> None:
    """One connection attempt with a short timeout, instead of MLflow's minutes of retries; a refused login
    and an unreachable database are each one line."""
    refuse_password_in_uri(uri)
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    shown = redact(uri)
    try:
        url = make_url(uri)
        backend = url.get_backend_name()
        timeout = {"mssql": {"timeout": TIMEOUT}, "oracle": {}}.get(backend, {"connect_timeout": TIMEOUT})
        engine = create_engine(url, poolclass=NullPool, connect_args=timeout)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise ConfigError(f"tracking.uri {shown!r}: {first_line(exc)}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        detail = first_line(getattr(exc, "orig", None) or exc)
        if re.search(r"password|authentication|access denied|login failed", detail, re.IGNORECASE):
            where = "PGPASSWORD or a 0600 ~/.pgpass (PGPASSFILE)" if backend == "postgresql" else None
            fix = f"give the password in {where}" if where else "check the user and password"
            raise ConfigError(f"the database at {shown} refused the login ({detail}); {fix}") from None
        raise ConfigError(
            f"tracking.uri {shown!r} is unreachable ({detail}); start the database or set tracking.uri"
        ) from None
    finally:
        engine.dispose()
