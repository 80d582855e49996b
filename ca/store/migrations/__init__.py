"""Alembic migrations of the CA datastore; a package so the revisions ship with trustmesh."""
