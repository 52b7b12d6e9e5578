"""Users and roles: the Django groups viewer, operator and admin."""
