"""A fake Google Drive v3 that speaks the real wire protocol, for the real googleapiclient.

``server`` (the HTTP server and its routes), ``model`` (files, folders, permissions), ``query``
(Drive's query and fields languages), ``uploads`` (multipart and resumable uploads), ``oauth``
(token endpoint: service-account JWTs and refresh tokens), ``wire`` (HTTP plumbing) and
``helpers`` (stores and credentials wired to a shared fake).
"""
