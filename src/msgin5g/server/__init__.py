"""SCM-S: the configuration management server functionality (TS 24.546 Annex C.3, SU_UeConfig)."""
