"""The notes' claims as runnable experiments: each composes lmstack's stages on the synthetic world and
writes a table, a plot and a report. ``lmstack experiment NAME`` runs one (see ``cli``)."""
