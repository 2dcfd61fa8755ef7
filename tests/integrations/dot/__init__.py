"""The django-oauth-toolkit plug-in, driven over HTTP in a separate server process."""
