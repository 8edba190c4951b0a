"""``umx-web``: a local web app to separate songs, play the stems together and download them.

Needs the ``web`` extra (``pip install 'openunmix-like[web]'``); importing this package imports no
web framework, :func:`openunmix_like.web.app.create_app` does.
"""
