"""The reverse-time integrators of :func:`scoresde.sample`, one module per concept."""
