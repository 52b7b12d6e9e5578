"""One module per command group, each over one part of the REST API."""
