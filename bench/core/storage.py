"""Optuna storage URLs: open one with a clear error, and print one without its password."""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError


def make_storage(url: str, heartbeat_s: int = 60):
    """An Optuna storage for ``url``; unreachable or malformed URLs raise one clear line."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return _retry(lambda: optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            engine_kwargs={"pool_pre_ping": True},
        ))
    except ImportError as e:
        raise UserError(f"--storage {safe_url(url)} needs a database driver ({e.name}); for PostgreSQL: pip install 'psycopg[binary]'")
    except Exception as e:  # sqlalchemy.exc.OperationalError, ArgumentError, ...
        raise UserError(f"--storage {safe_url(url)} is not reachable ({type(e).__name__}: {' '.join(str(e).split())[:100]}); "
                        f"check the URL, that the server runs and accepts this user")


def _retry(make, attempts: int = 5):
    """Workers starting together race to create the tables of a new database; retry briefly."""
    import time

    for i in range(attempts):
        try:
            return make()
        except ImportError:
            raise
        except Exception:
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))


def safe_url(url: str) -> str:
    """The URL fit to print: no user information, no password-like query parameter, no control
    character (:mod:`bench.core.redact`)."""
    from bench.core.redact import safe_text

    return safe_text(url)
