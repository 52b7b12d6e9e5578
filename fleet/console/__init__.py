"""The admin web console: server-rendered pages over the fleet's actions and queries."""
