"""The framework-free DPoP core: pure functions over ``cryptography`` and the stdlib."""
