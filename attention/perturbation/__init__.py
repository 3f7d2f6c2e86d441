"""SEG and PAG on shared denoisers: SEG's blur, its σ convention and processor, and the per-call perturbed
attention calls the guidance pipelines install. It builds on `integration`; the PLADIS core never imports it."""
