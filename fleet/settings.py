"""Django settings, read from the environment once, here (12-factor).

Environment:
  FLEET_DEBUG        "1" for development (SECRET_KEY may then be omitted).
  SECRET_KEY         required unless FLEET_DEBUG=1.
  DATABASE_URL       default: SQLite file var/fleet.sqlite3 (WAL); postgres://... via psycopg 3.
  ALLOWED_HOSTS      comma-separated; default localhost,127.0.0.1.
  MQTT_URL           broker for the server and worker, e.g. mqtt://127.0.0.1:1883.
  MQTT_DEVICE_URL    broker URL handed to devices at enrollment (TLS listener).
  FLEET_VAR_DIR      where run-time files live (artifacts, keys, broker state); default ./var.
  ENROLL_RATE        enrollment attempts per client address, DRF rate syntax; default 30/min.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FLEET_VAR_DIR", BASE_DIR / "var"))

DEBUG = os.environ.get("FLEET_DEBUG", "") == "1"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set unless FLEET_DEBUG=1")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

INSTALLED_APPS = [
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

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

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
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"enroll": os.environ.get("ENROLL_RATE", "30/min")},
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
BROKER_ACCESS = os.environ.get("BROKER_ACCESS", "dynsec" if MQTT_ADMIN_PASSWORD else "none")

# Model artifacts and package transfers (content-addressed files).
ARTIFACT_ROOT = Path(os.environ.get("ARTIFACT_ROOT", VAR_DIR / "artifacts"))
# Key-encryption key for OTA signing keys at rest; required to create or use signing keys.
FLEET_KEK = os.environ.get("FLEET_KEK", "")
# How long a signed manifest stays valid (manifest key 13).
PACKAGE_VALIDITY_DAYS = int(os.environ.get("PACKAGE_VALIDITY_DAYS", "30"))
# Largest model upload accepted (bytes).
MAX_MODEL_UPLOAD_BYTES = int(os.environ.get("MAX_MODEL_UPLOAD_BYTES", str(16 * 1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_MODEL_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
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
