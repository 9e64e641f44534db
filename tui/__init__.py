"""trainlab's terminal app (Textual). Never imports torch; talks to the engine only
through ``engine.protocol`` messages and the ``engine.config`` schema."""
