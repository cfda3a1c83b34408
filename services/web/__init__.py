"""The regional web service behind Envoy: the web page, ``/config.json``, the dev token, the edge's health and reflection."""
