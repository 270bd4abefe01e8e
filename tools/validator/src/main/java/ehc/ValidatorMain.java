package ehc;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.parser.StrictErrorHandler;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.Resource;

/**
 * The HL7 FHIR R4 instance validator (HAPI FHIR FhirInstanceValidator) as one long-running process, so that
 * the JVM and the R4 definitions load once per test run.
 *
 * <p>Usage: {@code java -cp ... ehc.ValidatorMain <fhir_profiles dir>}. The conformance resources in that folder
 * (StructureDefinition, CodeSystem, ValueSet, NamingSystem, ...) are loaded beside the R4 core. Then, one
 * command per line on stdin:
 *
 * <ul>
 *   <li>{@code validate <path>}: validates the file, or every .json / .xml file under the folder; prints one JSON
 *       line per file: {@code {"file": ..., "issues": [{"severity", "location", "message"}]}}.
 *   <li>{@code convert <path>}: parses the file (JSON or XML) with HAPI's strict parser and prints one JSON line
 *       {@code {"file": ..., "json": "<HAPI's JSON encoding>", "xml": "<HAPI's XML encoding>"}} or
 *       {@code {"file": ..., "error": ...}}.
 * </ul>
 *
 * Each command's output ends with a line {@code END}.
 */
public final class ValidatorMain {
  private ValidatorMain() {}

  public static void main(String[] args) throws IOException {
    FhirContext ctx = FhirContext.forR4Cached();
    PrePopulatedValidationSupport published = new PrePopulatedValidationSupport(ctx);
    IParser loader = ctx.newJsonParser();
    int loaded = 0;
    if (args.length > 0) {
      for (Path p : files(Path.of(args[0]))) {
        if (!p.toString().endsWith(".json")) {
          continue;
        }
        String text = Files.readString(p, StandardCharsets.UTF_8);
        if (!text.contains("\"resourceType\"")) {
          continue; // server configuration (resource-types.json, the structure table ...), not a resource
        }
        try {
          IBaseResource res = loader.parseResource(text);
          loaded += addConformance(published, res);
        } catch (RuntimeException e) {
          // reported when the file itself is validated
        }
      }
    }
    ValidationSupportChain chain =
        new ValidationSupportChain(
            published,
            new DefaultProfileValidationSupport(ctx),
            new CommonCodeSystemsTerminologyService(ctx),
            new InMemoryTerminologyServerValidationSupport(ctx),
            new SnapshotGeneratingValidationSupport(ctx));
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    module.setAnyExtensionsAllowed(true);
    module.setErrorForUnknownProfiles(true);
    FhirValidator validator = ctx.newValidator().registerValidatorModule(module);
    IParser strictJson = ctx.newJsonParser().setParserErrorHandler(new StrictErrorHandler());
    IParser strictXml = ctx.newXmlParser().setParserErrorHandler(new StrictErrorHandler());
    IParser outJson = ctx.newJsonParser();
    IParser outXml = ctx.newXmlParser();

    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    out.println("READY " + loaded);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      line = line.strip();
      if (line.isEmpty()) {
        continue;
      }
      int sp = line.indexOf(' ');
      String cmd = sp < 0 ? line : line.substring(0, sp);
      String arg = sp < 0 ? "" : line.substring(sp + 1);
      try {
        for (Path p : files(Path.of(arg))) {
          String text = Files.readString(p, StandardCharsets.UTF_8);
          if (cmd.equals("validate")) {
            out.println(validate(validator, p, text));
          } else if (cmd.equals("convert")) {
            out.println(convert(p, text, text.stripLeading().startsWith("<") ? strictXml : strictJson, outJson,
                outXml));
          }
        }
      } catch (IOException | RuntimeException e) {
        out.println("{\"file\":" + q(arg) + ",\"error\":" + q(String.valueOf(e)) + "}");
      }
      out.println("END");
    }
  }

  private static int addConformance(PrePopulatedValidationSupport published, IBaseResource res) {
    if (res instanceof Bundle) {
      int n = 0;
      for (Bundle.BundleEntryComponent e : ((Bundle) res).getEntry()) {
        if (e.getResource() != null) {
          n += addConformance(published, e.getResource());
        }
      }
      return n;
    }
    String type = ((Resource) res).fhirType();
    if (List.of("StructureDefinition", "CodeSystem", "ValueSet", "SearchParameter").contains(type)) {
      published.addResource(res);
      return 1;
    }
    return 0;
  }

  private static List<Path> files(Path root) throws IOException {
    List<Path> out = new ArrayList<>();
    if (Files.isDirectory(root)) {
      try (Stream<Path> s = Files.walk(root)) {
        s.filter(Files::isRegularFile)
            .filter(p -> p.toString().endsWith(".json") || p.toString().endsWith(".xml"))
            .sorted()
            .forEach(out::add);
      }
    } else {
      out.add(root);
    }
    return out;
  }

  private static String validate(FhirValidator validator, Path p, String text) {
    StringBuilder sb = new StringBuilder("{\"file\":").append(q(p.toString())).append(",\"issues\":[");
    try {
      ValidationResult r = validator.validateWithResult(text);
      boolean first = true;
      for (SingleValidationMessage m : r.getMessages()) {
        if (!first) {
          sb.append(',');
        }
        first = false;
        sb.append("{\"severity\":").append(q(m.getSeverity().getCode()))
            .append(",\"location\":").append(q(m.getLocationString()))
            .append(",\"message\":").append(q(m.getMessage())).append('}');
      }
    } catch (RuntimeException e) {
      sb.append("{\"severity\":\"fatal\",\"location\":\"\",\"message\":").append(q(String.valueOf(e))).append('}');
    }
    return sb.append("]}").toString();
  }

  private static String convert(Path p, String text, IParser parser, IParser outJson, IParser outXml) {
    try {
      IBaseResource res = parser.parseResource(text);
      return "{\"file\":" + q(p.toString()) + ",\"json\":" + q(outJson.encodeResourceToString(res))
          + ",\"xml\":" + q(outXml.encodeResourceToString(res)) + "}";
    } catch (RuntimeException e) {
      return "{\"file\":" + q(p.toString()) + ",\"error\":" + q(String.valueOf(e)) + "}";
    }
  }

  private static String q(String s) {
    if (s == null) {
      return "null";
    }
    StringBuilder sb = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"' -> sb.append("\\\"");
        case '\\' -> sb.append("\\\\");
        case '\n' -> sb.append("\\n");
        case '\r' -> sb.append("\\r");
        case '\t' -> sb.append("\\t");
        default -> {
          if (c < 0x20) {
            sb.append(String.format("\\u%04x", (int) c));
          } else {
            sb.append(c);
          }
        }
      }
    }
    return sb.append('"').toString();
  }
}
