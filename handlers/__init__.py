"""Completion handlers (shipped in the wheel as `spoold.handlers`; SPEC section 10).

- `config`: the `handlers:` settings (one strict model per `type`).
- `base`: the `Handler` interface and `HandlerEvent` every handler receives.
- `webhook`, `exec_command`, `copy_files`: the built-in types; `registry` builds them
  and loads `type: python` classes.
- `records`, `retry`: durable run records in the job directory, and the backoff policy.
- `examples/`: a worked `type: python` handler.

The background dispatcher that runs them is `spoold.service.handler_runs`.
"""
