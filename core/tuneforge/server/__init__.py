"""The OpenAI-compatible HTTP server behind ``tuneforge deploy``.

``tuneforge.server.app.create_app(engine, model_name=...)`` wraps any object that
serves the engine protocol (``tuneforge.inference``) in a FastAPI app;
``tuneforge.server.run.run_deploy(config)`` loads the model and serves that app
with uvicorn. The options are ``tuneforge.server.config.DeployConfig``. See
docs/serving.md. Nothing heavy is imported until one of those modules is.
"""
