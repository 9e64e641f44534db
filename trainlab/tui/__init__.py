"""trainlab's terminal app (Textual). Never imports torch; talks to the engine only
through ``trainlab.core.protocol`` messages and the ``trainlab.core.config`` schema."""
