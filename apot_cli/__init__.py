"""The ``apot`` console command (``apot qat``, ``apot parity``)."""
