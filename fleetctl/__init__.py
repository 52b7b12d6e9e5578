"""fleetctl: the operators' command line for a TinyML fleet, over the REST API only.

It never touches the database or imports the server: a CI job runs it against a deployed
server with a URL and an API token (``FLEET_URL``/``FLEET_TOKEN`` or
``~/.config/fleetctl/config.toml``).
"""
