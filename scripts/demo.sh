#!/usr/bin/env bash
# Install what is needed and run the whole demo on the embedded default: SQLite, a Mosquitto
# on a loopback port, the worker and the web server. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export FLEET_VAR_DIR=${FLEET_VAR_DIR:-$PWD/var}
mkdir -p "$FLEET_VAR_DIR"
chmod 700 "$FLEET_VAR_DIR"
# Secrets are made here, once, and kept out of git (var/ is ignored).
if [ ! -f "$FLEET_VAR_DIR/secret.env" ]; then
  umask 077
  {
    echo "SECRET_KEY=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))')"
    echo "MQTT_ADMIN_PASSWORD=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
    echo "FLEET_KEK=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    echo "DEMO_ADMIN_PASSWORD=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')"
  } >"$FLEET_VAR_DIR/secret.env"
fi
set -a; . "$FLEET_VAR_DIR/secret.env"; set +a
export FLEET_DEBUG=${FLEET_DEBUG:-1}
WEB_PORT=${WEB_PORT:-8000}
MQTT_PORT=${MQTT_PORT:-18830}
MQTT_TLS_PORT=${MQTT_TLS_PORT:-18831}
export MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
export MQTT_DEVICE_URL=mqtts://127.0.0.1:$MQTT_TLS_PORT

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  .venv/bin/python -m fleet.broker.mosquitto stop --dir "$FLEET_VAR_DIR/broker" || true
}
trap cleanup EXIT INT TERM

.venv/bin/python -m fleet.broker.mosquitto start --dir "$FLEET_VAR_DIR/broker" \
  --port "$MQTT_PORT" --tls-port "$MQTT_TLS_PORT"
export MQTT_CA_FILE=$FLEET_VAR_DIR/broker/ca.pem
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py create_user admin --role admin --password "$DEMO_ADMIN_PASSWORD" >/dev/null

.venv/bin/python manage.py runserver "127.0.0.1:$WEB_PORT" --noreload &
pids+=($!)
sleep 2
cat <<MSG

  Fleet demo is running.
    Console:   http://127.0.0.1:$WEB_PORT/console/
    API docs:  http://127.0.0.1:$WEB_PORT/api/docs/
    Admin:     http://127.0.0.1:$WEB_PORT/admin/
    Login:     admin / $DEMO_ADMIN_PASSWORD
    Broker:    $MQTT_URL (devices: $MQTT_DEVICE_URL)
  Ctrl-C stops it.

MSG
wait
