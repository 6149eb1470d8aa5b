"""The central server: members, servers, services catalog, federation CA, OCSP, TSA and global configuration."""
