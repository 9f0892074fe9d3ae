"""The ASGI layer in front of BentoML's routes: what no anonymous client may do to the service (`front`,
`admission`), the published contract made exact (`openapi`, `docs_page`), input hints (`hints`) and the HTTP metrics
(`metrics`); `routing` and `asgi` are what they share."""
