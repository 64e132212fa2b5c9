//! ember's snapshot format, memory files and userfaultfd page-fault handling
//! will live here, independent of KVM. Nothing is implemented yet.
