//! The ScalableApi operator: CRD types, pure desired-state builders and the reconcile loop.
