"""Route modules; `serving.app.create_app` includes them all in one place."""
