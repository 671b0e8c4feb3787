"""Completion handlers (shipped in the wheel as `spoold.handlers`; SPEC section 10).

- `config`: the `handlers:` settings (one strict model per `type`).
- `base`: the `Handler` interface and `HandlerEvent` every handler receives.
- `webhook`, `exec_command`, `copy_files`: the built-in types; `registry` builds them
  and loads `type: python` classes.
- `s3`, `postgres`, `label_studio`: built-in types behind install extras (their library is
  imported when the handler is built); `result_lines` reads the records they load.
- `records`, `retry`: durable run records in the job directory, and the backoff policy.
- `examples/`: a worked `type: python` handler.

The background dispatcher that runs them is `spoold.service.handler_runs`.
"""
