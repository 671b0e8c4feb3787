"""Built-in completion handlers (shipped in the wheel as `spoold.handlers`)."""
