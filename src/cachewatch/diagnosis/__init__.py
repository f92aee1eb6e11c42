"""Why a cache missed: prefix fingerprints, the fingerprint stores and the diagnoser."""
