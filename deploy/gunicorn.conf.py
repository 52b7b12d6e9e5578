"""Gunicorn configuration of the fleet's web process (``gunicorn -c deploy/gunicorn.conf.py``).

Every value can be overridden from the environment (``/etc/fleet/fleet.env`` under systemd,
``fleet.env`` under compose), so one file serves a laptop and a 32-core host. nginx sits in
front (deploy/nginx/fleet.conf): it terminates TLS, buffers slow uploads and sets
X-Forwarded-For/-Proto; the app reads the client from X-Forwarded-For with
TRUSTED_PROXY_COUNT=1.
"""

from __future__ import annotations

import multiprocessing
import os

wsgi_app = "fleet.wsgi:application"
# Loopback only: nginx is the only client. Under compose, FLEET_BIND=0.0.0.0:8000.
bind = [os.environ.get("FLEET_BIND", "127.0.0.1:8000")]

# Sync-style workers with a few threads each: requests are short and database-bound; the
# slow part of an upload (the body) is buffered by nginx before it reaches us. Uploads are
# validated in a child process (TFLM), which holds one thread for a second or two.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 17)))
threads = int(os.environ.get("WEB_THREADS", "4"))
# A model upload's validation runs TFLM in a child with its own timeout; leave room for it.
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5  # nginx keeps upstream connections open (keepalive in the upstream block)
# Recycle workers now and then: bounds the memory a leak or a big report can hold.
max_requests = 2000
max_requests_jitter = 200
# Heartbeat files in RAM: a worker blocked on a slow disk is not taken for a hung one.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Trust X-Forwarded-Proto (wsgi.url_scheme) only from the proxy in front.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# Access log on stdout (journald, docker logs): the real client first (X-Forwarded-For as
# nginx set it), then the proxy's address, request, status, bytes and microseconds.
accesslog = os.environ.get("WEB_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("FLEET_LOG_LEVEL", "info").lower()
access_log_format = ('%({x-forwarded-for}i)s via %(h)s "%(r)s" %(s)s %(b)s %(D)sus '
                     '"%(a)s"')
proc_name = "fleet-web"
# Bodies never reach here unbuffered; still refuse absurd header sizes.
limit_request_field_size = 16384
