"""Pure domain logic: no Faust, no I/O."""
