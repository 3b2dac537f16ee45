//! Embedded cluster store: Kubernetes objects with revisions, list + watch, and subnet leases, in one SQLite file safe for several processes.
