"""finops: nightly cost governance for AI infrastructure on Azure."""
