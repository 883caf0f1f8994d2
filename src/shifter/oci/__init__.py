"""Pure OCI / Docker image-spec knowledge: references, media types, digests, manifests, platforms.

Kept import-free: ``shifter.oci.reference`` is on the runtime's launch path.
"""
