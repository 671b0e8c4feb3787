"""`spoold api`: OpenAI's Files and Batches endpoints over the spool (SPEC section 11).

A thin, stateless layer: every fact lives in the spool (uploads and the API's small
records under `SPOOL/.spoold/api/`, batches as ordinary jobs), so any number of API
processes serve one spool and a kill -9 of one loses nothing. Routers only turn HTTP
into calls of the plain functions in `files/` and `batches/`, which tests call directly.
"""
