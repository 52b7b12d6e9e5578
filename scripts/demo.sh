#!/usr/bin/env bash
# Install what is needed and run the whole demo on the embedded default: SQLite, a Mosquitto
# on a loopback port, the worker and the web server. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo trains and converts its model with TensorFlow: install the conversion extra too.
FLEET_EXTRAS=test,convert bash scripts/bootstrap.sh

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
    echo "MQTT_WORKER_PASSWORD=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
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
# The throttle counters every web process shares (migrate makes it too; explicit is cheap).
.venv/bin/python manage.py createcachetable
.venv/bin/python manage.py create_user admin --role admin --password="$DEMO_ADMIN_PASSWORD" >/dev/null
.venv/bin/python manage.py provision_broker_services
echo "demo: seeding (trains and converts the demo model on the first run) ..."
mkdir -p "$FLEET_VAR_DIR/demo" "$FLEET_VAR_DIR/logs"
.venv/bin/python manage.py seed_demo --out "$FLEET_VAR_DIR/demo" --devices "${DEMO_DEVICES:-50}" \
  >"$FLEET_VAR_DIR/demo/seed.log" 2>&1 || { cat "$FLEET_VAR_DIR/demo/seed.log"; exit 1; }

.venv/bin/python manage.py fleet_worker --name demo-worker >"$FLEET_VAR_DIR/logs/worker.log" 2>&1 &
pids+=($!)
.venv/bin/python manage.py runserver "127.0.0.1:$WEB_PORT" --noreload \
  >"$FLEET_VAR_DIR/logs/web.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  curl -sf -o /dev/null "http://127.0.0.1:$WEB_PORT/api/schema/" && break
  sleep 0.2
done

# A simulated fleet: every device enrolls with the demo token, then runs the int8 model in TFLM.
demo_json=$FLEET_VAR_DIR/demo/demo.json
read -r token package model hardware < <(.venv/bin/python -c "import json,sys; d=json.load(open('$demo_json')); print(d['token'], d['package_id'], d['model'], d['hardware'])")
.venv/bin/python -m device_sdk simulate --server "http://127.0.0.1:$WEB_PORT" --token "$token" \
  --devices "${DEMO_DEVICES:-50}" --model "$model" --hardware "$hardware" --package-id "$package" \
  --state-dir "$FLEET_VAR_DIR/demo/devices" --rate 1 >"$FLEET_VAR_DIR/logs/simulator.log" 2>&1 &
pids+=($!)
cat <<MSG

  Fleet demo is running.
    Console:   http://127.0.0.1:$WEB_PORT/console/
    API docs:  http://127.0.0.1:$WEB_PORT/api/docs/
    Admin:     http://127.0.0.1:$WEB_PORT/admin/
    Login:     admin / $DEMO_ADMIN_PASSWORD
    Broker:    $MQTT_URL (devices: $MQTT_DEVICE_URL)
    Fleet:     ${DEMO_DEVICES:-50} simulated devices running gesture@1.0.0 in TFLM
    Logs:      $FLEET_VAR_DIR/logs/
  Try a rollout of gesture@1.1.0 from the console's Rollouts page, or:
    .venv/bin/python manage.py rollout create --model gesture --version 1.1.0 --group demo
  Ctrl-C stops it.

MSG
wait
