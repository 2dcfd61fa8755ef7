"""Migrations of the django-oauth-toolkit plug-in."""
