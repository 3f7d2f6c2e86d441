"""Runnable examples, one per section of the reference README: each writes a without/with-PLADIS grid."""
