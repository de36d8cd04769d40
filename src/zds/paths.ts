/** Where ztunnel looks for the node agent's ZDS socket (a host folder shared with the ztunnel DaemonSet). */
export const DEFAULT_ZDS_SOCKET = '/var/run/ztunnel/ztunnel.sock';
