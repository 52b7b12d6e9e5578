"""No models: the module exists so that `migrate` signals this app (post_migrate is sent only
to apps with a models module) and fleet.core.apps creates the throttle cache table."""
