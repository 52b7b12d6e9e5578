"""Django settings, read from the environment once, here (12-factor).

Environment:
  FLEET_DEBUG        "1" for development (SECRET_KEY may then be omitted).
  SECRET_KEY         required unless FLEET_DEBUG=1.
  DATABASE_URL       default: SQLite file var/fleet.sqlite3 (WAL); postgres://... via psycopg 3.
  ALLOWED_HOSTS      comma-separated; default localhost,127.0.0.1.
  MQTT_URL           broker for the server and worker, e.g. mqtt://127.0.0.1:1883.
  MQTT_DEVICE_URL    broker URL handed to devices at enrollment (TLS listener).
  MQTT_GATEWAY_URL   broker URL handed to serial gateways (default MQTT_DEVICE_URL; with
                     BROKER_ACCESS=x509, the gateways' TLS password listener, where the
                     client id is the gateway's uid).
  FLEET_VAR_DIR      where run-time files live (artifacts, keys, broker state); default ./var.
  ENROLL_RATE        enrollment attempts per client address, DRF rate syntax; default 30/min.
  ENROLL_CHALLENGE_RATE  proof-of-possession nonces per client address; default 60/min.
  GATEWAY_RATE       gateway-token calls per client address; default 60/min.
  TRUSTED_PROXY_COUNT  reverse proxies in front of the web server; default 0 (client = REMOTE_ADDR,
                     X-Forwarded-For ignored); N: the Nth address from the right of X-Forwarded-For.
  LOGIN_RATE_USER, LOGIN_RATE_CLIENT  console/admin login attempts per username and per client.
  SECURE_SSL_REDIRECT, SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE  1/0; default 1 unless FLEET_DEBUG=1.
  SECURE_HSTS_SECONDS  default one year unless FLEET_DEBUG=1 (then 0).
  SECURE_PROXY_SSL_HEADER  header a trusted proxy sets to "https" (default X-Forwarded-Proto when
                     TRUSTED_PROXY_COUNT > 0, else none).
  BROKER_ACCESS      "dynsec" (default outside debug) or "none" (only with FLEET_DEBUG=1).
  METRICS_TOKEN, METRICS_PUBLIC  /metrics wants the bearer token unless METRICS_PUBLIC=1.
  MAX_MODEL_UPLOAD_BYTES, MAX_DATASET_UPLOAD_BYTES  largest accepted model / data set upload.
  ADMISSION_PROBE_DIR  the firmware's QEMU probe images (default firmware/build/probe).
  ADMISSION_REQUIRE_MEASURED  1: refuse to validate when a Cortex-M profile's arena cannot be
                     measured in QEMU (default 0: estimate, saying why; the test command
                     sets 1 when CI=true).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def _env_flag(name: str, default: bool) -> bool:
    """Read a 1/0 switch; anything else is a configuration error, not a silent default."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0, not {value!r}")


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """Read a whole number of at least ``minimum``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLEET_VAR_DIR", BASE_DIR / "var"))

DEBUG = os.environ.get("FLEET_DEBUG", "") == "1"
# FLEET_DEBUG as read at start: development allowances (BROKER_ACCESS=none) go by this, not
# by DEBUG, which test runners switch off.
FLEET_DEBUG = DEBUG
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set unless FLEET_DEBUG=1")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

# Reverse proxies in front of the web server. 0: the client is REMOTE_ADDR and X-Forwarded-For
# is ignored (anyone can send it); N: the Nth address from the right of X-Forwarded-For, the
# one the outermost trusted proxy saw (fleet.core.throttling.client_ip).
TRUSTED_PROXY_COUNT = _env_int("TRUSTED_PROXY_COUNT", 0)

# HTTPS. The defaults are production's; FLEET_DEBUG=1 (the demo, the tests: plain http on
# loopback) turns them off. Each can be set explicitly with 1/0.
SECURE_SSL_REDIRECT = _env_flag("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = _env_flag("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _env_flag("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_flag("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
# Which header a trusted proxy sets to "https" for requests that came over TLS; only
# meaningful behind a proxy that always sets (or strips) it.
_proxy_ssl_header = os.environ.get(
    "SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if TRUSTED_PROXY_COUNT else ""
).strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)

INSTALLED_APPS = [
    "fleet.core",  # rate buckets (a model); creates the login throttle cache table after migrate
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fleet.accounts",
    "fleet.audit",
    "fleet.devices",
    "fleet.telemetry",
    "fleet.broker",
    "fleet.intake",
    "fleet.console",
    "ota",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fleet.urls"
WSGI_APPLICATION = "fleet.wsgi.application"
ASGI_APPLICATION = "fleet.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_default_db = f"sqlite:///{VAR_DIR / 'fleet.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", _default_db), conn_max_age=60, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # WAL lets the worker write while the web server reads; IMMEDIATE avoids lock upgrades
    # failing mid-transaction under concurrent writers.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "/console/login/"

# Login attempt counters (fleet.core.login_throttle) are shared by every web process (and host):
# a table in the database, created by `migrate` (fleet.core.apps) or `manage.py
# createcachetable`. The API's rate limits below have their own table (fleet.core.buckets).
THROTTLE_CACHE = "throttle"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    THROTTLE_CACHE: {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "fleet_throttle_cache",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    },
}
# Console and admin logins: attempts per username and per client address (DRF rate syntax).
LOGIN_RATE_USER = os.environ.get("LOGIN_RATE_USER", "10/hour")
LOGIN_RATE_CLIENT = os.environ.get("LOGIN_RATE_CLIENT", "30/hour")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        # A serial gateway's own token: RolePermission scopes it to its children endpoint.
        "fleet.devices.api.authentication.GatewayTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleet.accounts.permissions.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "fleet.core.pagination.BoundedLimitOffsetPagination",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "fleet.core.api.QueryFormatNegotiation",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "fleet.core.schema.FleetAutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "enroll": os.environ.get("ENROLL_RATE", "30/min"),
        "enroll_challenge": os.environ.get("ENROLL_CHALLENGE_RATE", "60/min"),
        "gateway": os.environ.get("GATEWAY_RATE", "60/min"),
    },
    "EXCEPTION_HANDLER": "fleet.core.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "TinyML fleet API",
    "DESCRIPTION": "Devices, enrollment, model registry, signed OTA packages, rollouts, telemetry.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Assets come from drf-spectacular-sidecar: the docs work with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Largest enrollment request body accepted (a PEM key plus capabilities fits easily).
ENROLL_MAX_BODY_BYTES = 16 * 1024

MQTT_URL = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
MQTT_DEVICE_URL = os.environ.get("MQTT_DEVICE_URL", MQTT_URL)
# Gateways log in with a password: with BROKER_ACCESS=x509 the device listener takes
# certificates only, so they get the password TLS listener.
MQTT_GATEWAY_URL = os.environ.get("MQTT_GATEWAY_URL", "")  # empty: MQTT_DEVICE_URL

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FLEET_LOG_LEVEL", "INFO")},
}

# The server drives the broker's dynamic-security plugin with this admin identity.
MQTT_ADMIN_USERNAME = os.environ.get("MQTT_ADMIN_USERNAME", "fleet-admin")
MQTT_ADMIN_PASSWORD = os.environ.get("MQTT_ADMIN_PASSWORD", "")
# "none" (no broker administration: a revoked device keeps its broker credential) is for
# development only; outside debug the server always administers the broker.
BROKER_ACCESS = os.environ.get(
    "BROKER_ACCESS", "dynsec" if MQTT_ADMIN_PASSWORD or not DEBUG else "none"
)
if BROKER_ACCESS not in ("dynsec", "x509", "none"):
    raise ImproperlyConfigured(
        f"BROKER_ACCESS must be 'dynsec', 'x509' or 'none', not {BROKER_ACCESS!r}")
# BROKER_ACCESS=x509 (fleet/broker/x509.py): the device CA, CRL and ACL folder the broker
# reads, and the broker's pid file (revocations and service changes reload it with SIGHUP).
BROKER_X509_DIR = Path(os.environ.get("BROKER_X509_DIR", VAR_DIR / "broker" / "pki"))
BROKER_PID_FILE = Path(os.environ.get("BROKER_PID_FILE", VAR_DIR / "broker" / "mosquitto.pid"))
if BROKER_ACCESS == "none" and not DEBUG:
    raise ImproperlyConfigured(
        "BROKER_ACCESS=none is refused unless FLEET_DEBUG=1: without broker administration "
        "enrollment gives the broker no credential and a revoked device keeps its access. "
        "Set MQTT_ADMIN_PASSWORD (BROKER_ACCESS=dynsec)."
    )

# Model artifacts and package transfers (content-addressed files).
ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", VAR_DIR / "artifacts"))
# Key-encryption key for OTA signing keys at rest; required to create or use signing keys.
FLEET_KEK = os.environ.get("FLEET_KEK", "")
# How long a signed manifest stays valid (manifest key 13).
PACKAGE_VALIDITY_DAYS = int(os.environ.get("PACKAGE_VALIDITY_DAYS", "30"))
# Packages a rollout builds expire sooner: a pulled manifest is installable until it expires
# (by a device that missed both the withdrawal and the signed revocation).
ROLLOUT_PACKAGE_VALIDITY_DAYS = int(os.environ.get("ROLLOUT_PACKAGE_VALIDITY_DAYS", "7"))
# Seconds a worker holds a rollout's lease (ota/rollouts/controller.py): the longest a rollout
# goes undriven after its worker dies. Renewed each controller tick (1 s), so keep it >= 2.
ROLLOUT_LEASE_S = _env_int("ROLLOUT_LEASE_S", 15, minimum=2)
# Seconds without a heartbeat after which a worker counts as dead: a live peer then drains its
# broker session (stores what it held, ends it; fleet/intake/drain.py). Workers report every
# min(5 s, a quarter of this), so keep it well above a stall of the busiest worker.
WORKER_DEAD_AFTER_S = _env_int("WORKER_DEAD_AFTER_S", 60, minimum=4)
# How only offered devices read a package's fan-out (fleet/broker/access.py): "encrypt"
# (a key per package, sent to offered devices) or "grant" (broker ACL per deployment).
FANOUT_ACCESS = os.environ.get("FANOUT_ACCESS", "encrypt")
if FANOUT_ACCESS not in ("encrypt", "grant"):
    raise ImproperlyConfigured("FANOUT_ACCESS is encrypt or grant")
# A rotated signing key becomes the signer only once this share of the devices trusts it.
KEY_ACTIVATION_SHARE = float(os.environ.get("KEY_ACTIVATION_SHARE", "0.95"))
# Admission measures Cortex-M arenas with the firmware's probe images in QEMU
# (ota/validation/qemu_probe.py; `make -C firmware probes`). Missing images or QEMU: the
# figure is estimated and the report says why, unless measurement is required
# (scripts/test.sh requires it when CI=true).
ADMISSION_PROBE_DIR = Path(os.environ.get("ADMISSION_PROBE_DIR",
                                          BASE_DIR / "firmware" / "build" / "probe"))
ADMISSION_REQUIRE_MEASURED = _env_flag("ADMISSION_REQUIRE_MEASURED", False)
# Largest uploads accepted (bytes), checked from the upload's size before it is read: a
# .tflite or .keras model, and a data set (.npy/.npz: conversion data or validation samples).
MAX_MODEL_UPLOAD_BYTES = _env_int("MAX_MODEL_UPLOAD_BYTES", 16 * 1024 * 1024, minimum=1)
MAX_DATASET_UPLOAD_BYTES = _env_int("MAX_DATASET_UPLOAD_BYTES", 64 * 1024 * 1024, minimum=1)
# A whole multipart request: every file plus the form fields.
MAX_UPLOAD_REQUEST_BYTES = MAX_MODEL_UPLOAD_BYTES + MAX_DATASET_UPLOAD_BYTES + 1024 * 1024
# Non-file request bodies (JSON, form fields) held in memory: Django's default, 2.5 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Uploaded files above this go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Largest page an API list returns (?limit=), and the largest offset accepted.
API_MAX_PAGE_SIZE = 500
API_MAX_OFFSET = 10_000_000
# CA certificate devices use to verify the broker's TLS listener (handed out at enrollment).
MQTT_CA_FILE = os.environ.get("MQTT_CA_FILE", "")

# The worker's own broker identity (provisioned by `manage.py provision_broker_services`).
MQTT_WORKER_USERNAME = os.environ.get("MQTT_WORKER_USERNAME", "fleet-worker")
MQTT_WORKER_PASSWORD = os.environ.get("MQTT_WORKER_PASSWORD", "")
# Shared-subscription group of the workers: every worker of one fleet uses the same.
MQTT_WORKER_GROUP = os.environ.get("MQTT_WORKER_GROUP", "fleet")
# /metrics wants ``Authorization: Bearer $METRICS_TOKEN``; only METRICS_PUBLIC=1 opens it to
# everyone (no loopback exemption: behind a local reverse proxy every caller is loopback).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
METRICS_PUBLIC = os.environ.get("METRICS_PUBLIC", "") == "1"
