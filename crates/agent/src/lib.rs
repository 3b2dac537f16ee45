//! The weft node agent: subnet leases, backends (vxlan, host-gw), masquerade, reconciliation.
