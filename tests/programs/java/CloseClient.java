// CloseClient: short connections from the JVM, ended the ways the JDK ends
// them. Compiled with --release 11, so JDK 11 and 17 run the same classes.
//
// usage: java CloseClient MODE HOST PORT COUNT
//   MODE socket       java.net.Socket: connect, write "bye\n", close(). Run with
//                     -Djdk.net.usePlainSocketImpl=true (JDK 13..17) or on
//                     JDK 11, the socket is PlainSocketImpl's, which closes by
//                     dup2()ing a marker descriptor over the socket, then
//                     closing the marker.
//   MODE nio-blocked  java.nio SocketChannel: connect, write "bye\n", start a
//                     thread blocked in read(), then close() from the main
//                     thread: NIO's preClose dup2()s its marker over the socket
//                     and signals the reader.
// Prints one line per failed connection ("conn N: <exception>") and, last,
// "ok=N eaddrnotavail=N other=N" like tests/programs/port_probe.
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;

public final class CloseClient {
    private static final byte[] BYE = "bye\n".getBytes(StandardCharsets.US_ASCII);

    private static void viaSocket(InetSocketAddress addr) throws IOException {
        Socket s = new Socket();
        try {
            s.connect(addr, 5000);
            OutputStream out = s.getOutputStream();
            out.write(BYE);
            out.flush();
        } finally {
            s.close();
        }
    }

    private static void viaBlockedChannel(InetSocketAddress addr) throws Exception {
        SocketChannel ch = SocketChannel.open();
        try {
            ch.connect(addr);
            ch.write(ByteBuffer.wrap(BYE));
            final String[] readerSaw = {null};
            Thread reader = new Thread(() -> {
                try {
                    int n = ch.read(ByteBuffer.allocate(64));
                    readerSaw[0] = "read " + n;
                } catch (ClosedChannelException e) {  // AsynchronousCloseException among them
                    readerSaw[0] = "closed";
                } catch (IOException e) {
                    readerSaw[0] = e.toString();
                }
            });
            reader.start();
            // Until the reader sits in the kernel's read(): RUNNABLE, then a moment.
            while (reader.getState() == Thread.State.NEW) Thread.onSpinWait();
            Thread.sleep(1);
            ch.close();
            reader.join(5000);
            if (reader.isAlive()) throw new IOException("the reader was not woken by close()");
            if (!"closed".equals(readerSaw[0])) throw new IOException("the reader saw " + readerSaw[0]);
        } finally {
            ch.close();
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: java CloseClient socket|nio-blocked HOST PORT COUNT");
            System.exit(64);
        }
        String mode = args[0];
        InetSocketAddress addr = new InetSocketAddress(args[1], Integer.parseInt(args[2]));
        int count = Integer.parseInt(args[3]);
        int ok = 0, eaddrnotavail = 0, other = 0;
        for (int i = 0; i < count; i++) {
            try {
                if (mode.equals("socket")) viaSocket(addr);
                else if (mode.equals("nio-blocked")) viaBlockedChannel(addr);
                else throw new IllegalArgumentException("unknown mode " + mode);
                ok++;
            } catch (IllegalArgumentException e) {
                System.err.println(e.getMessage());
                System.exit(64);
            } catch (Exception e) {
                String msg = String.valueOf(e.getMessage());
                if (msg.contains("Cannot assign requested address")) eaddrnotavail++;
                else other++;
                System.out.println("conn " + i + ": " + e);
            }
        }
        System.out.println("ok=" + ok + " eaddrnotavail=" + eaddrnotavail + " other=" + other);
    }
}
